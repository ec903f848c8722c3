"""Scale-out: two full dynos syncing from one bucket behind a round-robin router."""
