package store

import (
	"context"
	"fmt"
)

// AwaitCommit waits for the outcome of a write handed to a store's group
// committer: the error the committer sends on reply; or, when ctx ends
// first, ctx's error prefixed by name (the write may still be stored); or
// closed when the committer has stopped without answering (it answers
// every write it took before it stops, so the write came after). An
// outcome that arrives together with the end of ctx or of the committer is
// preferred.
func AwaitCommit(ctx context.Context, reply <-chan error, stopped <-chan struct{}, name string, closed error) error {
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		select {
		case err := <-reply:
			return err
		default:
			return fmt.Errorf("%s: %w", name, ctx.Err())
		}
	case <-stopped:
		select {
		case err := <-reply:
			return err
		default:
			return closed
		}
	}
}
