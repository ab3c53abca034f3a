#!/bin/sh
# Run by make run: each "want" must be reported, no planted-never-*.
set -eu
myfunc() { planted-in-func; } # want planted-in-func
myfunc
planted-sh-a | planted-sh-b # want planted-sh-a planted-sh-b
x=$(planted-subst arg) # want planted-subst
sudo -u nobody planted-sudo # want planted-sudo sudo
env -i X=1 planted-env # want planted-env
timeout -k 5 10 planted-timeout # want planted-timeout
command -v planted-probe >/dev/null # want planted-probe
ip netns exec ns1 planted-netns arg # want planted-netns ip:run
if planted-if; then :; fi # want planted-if
for f in planted-never-loopword; do planted-loop "$f"; done # want planted-loop
case "$x" in a) planted-case ;; *) planted-case-star ;; esac # want planted-case planted-case-star
[[ -n planted-never-test ]] && planted-after-test # want planted-after-test
y=`planted-backtick` # want planted-backtick
cat "$y" > >(planted-procsubst) # want planted-procsubst
echo "$(planted-in-quotes)" 'planted-never-single' # want planted-in-quotes
/usr/sbin/planted-abs # want planted-abs
>planted-never-redir-target planted-after-redir 2>&1 # want planted-after-redir
dnsmasq --version # want dnsmasq:run
inner='
planted-inner-script --flag # want planted-inner-script
'
bash -c "$inner"
cat <<EOF
planted-never-heredoc
EOF
./bin/planted-never-relative
$x planted-never-var-arg
echo planted-never-echo-arg
z=$((1 + 2)) # arithmetic, no programs
