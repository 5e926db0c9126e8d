"""`make bench` (`python -m benchmarks`, run from the repository root), one module per job.

Not part of the product: this package sits beside `secinfer/` and is not in the wheel.

Plaintext sections: `accuracy` (our approximations vs CrypTen's built-ins, error alone),
`training_cost` (forward + backward time vs torch), `plain_tables` (their markdown).

MPC section (two parties and a dealer as real processes, ours vs CrypTen side by side):
`cases` (what is measured and the fixed setting), `inputs` (realistic inputs, layer
weights, float64 references), `variants` (the implementations of each op),
`crypten_baselines` (CrypTen's built-ins and its own decode), `party_helpers` (sharing,
opening, warm-ups inside a party), `ops` (the op section), `layer_party` and `layer` (the
encoder-layer section), `traffic` (two parties' counts into rows and ratios), `tables`
(markdown), `records` (the whole section's record and its files), `published` (figures
measured elsewhere, kept apart).
"""
