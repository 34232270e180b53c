"""Experiments that combine the layers below: the erasure experiment (`erase`, `erase_report`,
the study's Table 7) and the demo (`demo`, every capability on tiny models)."""
