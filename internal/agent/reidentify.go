package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// swapSigner is the server's host key, which a reidentify replaces for
// every later handshake (connections already made keep theirs).
type swapSigner struct{ cur atomic.Pointer[ssh.Signer] }

func newSwapSigner(s ssh.Signer) *swapSigner {
	w := &swapSigner{}
	w.cur.Store(&s)
	return w
}

func (w *swapSigner) PublicKey() ssh.PublicKey { return (*w.cur.Load()).PublicKey() }

func (w *swapSigner) Sign(r io.Reader, data []byte) (*ssh.Signature, error) {
	return (*w.cur.Load()).Sign(r, data)
}

// renumberWait bounds how long a reidentify with a network waits for the
// daemon to close the channel (it has then read the answer) before the
// guest leaves the address that connection runs over.
const renumberWait = 5 * time.Second

// reidentify is an ember-reidentify request (guestproto.ReidentifyCommand):
// the guest becomes a new machine, with a new host key, which goes back
// on stdout; a network in the request is taken after that answer.
func (s *session) reidentify(r guestproto.Reidentify, bad error) {
	s.serveRequest(bad, func() {
		if err := s.runReidentify(r); err != nil {
			s.fail(&startError{1, "ember: " + err.Error()})
		}
	})
}

func (s *session) runReidentify(r guestproto.Reidentify) error {
	if s.srv.cfg.Reidentify == nil {
		return fmt.Errorf("reidentify is only available to the agent of a VM")
	}
	if r.Net != nil && s.srv.cfg.Renumber == nil {
		return fmt.Errorf("this agent cannot change the guest's network")
	}
	entropy, err := io.ReadAll(io.LimitReader(s.ch, guestproto.MaxEntropy+1))
	if err != nil {
		return fmt.Errorf("read the host's entropy: %w", err)
	}
	if len(entropy) < guestproto.MinEntropy || len(entropy) > guestproto.MaxEntropy {
		return fmt.Errorf("%d bytes of entropy, want %d to %d", len(entropy), guestproto.MinEntropy, guestproto.MaxEntropy)
	}
	if err := s.srv.cfg.Reidentify(r.Hostname, r.Now, entropy); err != nil {
		return err
	}
	// The kernel's generator is reseeded: the new key comes from it.
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return fmt.Errorf("host key signer: %w", err)
	}
	if s.srv.cfg.KeyOut != nil {
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			return fmt.Errorf("marshal host key: %w", err)
		}
		if err := s.srv.cfg.KeyOut(pem.EncodeToMemory(block)); err != nil {
			return fmt.Errorf("hand the new host key to init: %w", err)
		}
	}
	s.srv.hostKey.cur.Store(&signer)
	s.srv.log.Info("reidentified after a restore", "hostname", r.Hostname, "host_key", ssh.FingerprintSHA256(signer.PublicKey()))
	if _, err := s.ch.Write(ssh.MarshalAuthorizedKey(signer.PublicKey())); err != nil {
		return err
	}
	s.finish(0)
	if r.Net != nil {
		// The daemon reaches this guest at its new address from now
		// on; this connection, to the old one, has done its work once
		// the daemon closed the channel. A failure is only logged (the
		// console): the daemon's dial to the new address then fails
		// and shows it.
		t := time.NewTimer(renumberWait)
		select {
		case <-s.peerClosed:
		case <-t.C:
		}
		t.Stop()
		if err := s.srv.cfg.Renumber(r.Net); err != nil {
			s.srv.log.Error("take the vm's network after a restore", "ip", r.Net.IP, "mac", r.Net.MAC, "err", err)
		} else {
			s.srv.log.Info("took the vm's network after a restore", "ip", r.Net.IP, "mac", r.Net.MAC)
		}
	}
	return nil
}
