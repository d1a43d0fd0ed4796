package server

import "net/http"

// HTTPSHandler is the HTTPS listener's handler, for fuzzing the JSON API
// through httptest without TLS or a socket.
func (s *Server) HTTPSHandler() http.Handler { return s.https.Handler }
