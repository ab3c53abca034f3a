package wire

// WebInfo says where the daemon's web dashboard answers: URL carries the
// token (open it once; the page keeps a cookie and drops the token from
// the address). Reason says why there is none when URL is empty.
type WebInfo struct {
	URL    string `json:"url,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// WebTokenCookie is the cookie the dashboard keeps its token in.
const WebTokenCookie = "ember_token"
