"""Runtime: distributed start, launcher, preemption, watchdog, goodput, compile cache,
CPU tuning."""
