"""Delivery control shared by every worker process: rate limits, deliveries in flight, circuit
breakers and per-key ordering of each destination (:mod:`.base`), kept in Redis
(:mod:`.redis`) or in the database (:mod:`.database`), whichever carries the queue."""
