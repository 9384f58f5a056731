"""Training: the host loop, train state, steps, losses, optimizer and what each objective needs."""
