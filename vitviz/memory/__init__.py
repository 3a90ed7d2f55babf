"""What a request may cost and the budget that admits it: cost estimates, admission, byte-bounded
caches."""
