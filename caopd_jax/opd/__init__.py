"""The OPD / CaOPD algorithm: prompts to arrays, verification, the batch, CaOPD, the iteration."""
