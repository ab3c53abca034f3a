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

// reidentify is an ember-reidentify request (guestproto.ReidentifyCommand):
// the guest becomes a new machine, with a new host key, which goes back
// on stdout.
func (s *session) reidentify(hostname string, now time.Time, bad error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if bad != nil {
			s.fail(&startError{exitCannotRun, "ember: " + bad.Error()})
			return
		}
		if err := s.runReidentify(hostname, now); err != nil {
			s.fail(&startError{1, "ember: " + err.Error()})
		}
	}()
}

func (s *session) runReidentify(hostname string, now time.Time) error {
	if s.srv.cfg.Reidentify == nil {
		return fmt.Errorf("reidentify is only available to the agent of a VM")
	}
	entropy, err := io.ReadAll(io.LimitReader(s.ch, guestproto.MaxEntropy+1))
	if err != nil {
		return fmt.Errorf("read the host's entropy: %w", err)
	}
	if len(entropy) < guestproto.MinEntropy || len(entropy) > guestproto.MaxEntropy {
		return fmt.Errorf("%d bytes of entropy, want %d to %d", len(entropy), guestproto.MinEntropy, guestproto.MaxEntropy)
	}
	if err := s.srv.cfg.Reidentify(hostname, now, entropy); err != nil {
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
	s.srv.log.Info("reidentified after a restore", "hostname", hostname, "host_key", ssh.FingerprintSHA256(signer.PublicKey()))
	if _, err := s.ch.Write(ssh.MarshalAuthorizedKey(signer.PublicKey())); err != nil {
		return err
	}
	s.finish(0)
	return nil
}
