"""The serving sweep: profiles x the same trace, on real pools behind the real router."""
