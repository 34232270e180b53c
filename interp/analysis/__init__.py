"""Analysis of recorded activations: what a layer encodes and what removing it does.

- `targets`: what a probe reads out or an eraser removes, resolved against a store
  (`build_target`, `Target`); `acoustics`: energy and pitch per audio position;
- `probing`: the grouped cross-validated linear probe (one estimator for every caller);
  `sweep`: one probe per layer with its baselines (`interp probe`);
- `ctc`, `ctc_loss`: the linear CTC heads of the text-decodability probe;
- `lens`: the logit lens, live or from a store;
- `concepts`, `leace`, `reprobe`: LEACE erasers fitted from a store, and fresh probes on
  erased activations;
- `plots`: figures of these results.

Everything here reads stores and models through the core (`interp.store`, `interp.trace`,
`interp.models`) and never imports tasks, cascades, experiments or the command line.
"""
