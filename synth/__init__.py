"""A synthetic shop's order exports, for tests and benchmarks (installed as ``patron_synth``).

Not part of the product: Patron never imports it; ``patron synth`` is a thin door to it for
people who want a shop of a given size to try Patron on.
"""
