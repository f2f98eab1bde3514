"""The consuming side: read batches from the queue, process them, acknowledge."""
