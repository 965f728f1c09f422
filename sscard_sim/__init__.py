"""Virtual devices: a card and a PSAM that sit where real ones would, behind the real reader stacks."""
