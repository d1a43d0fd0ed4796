package pgstore

// Queued is how many RecordIssuance calls wait for the committers.
func Queued(s *Store) int { return len(s.queue) }
