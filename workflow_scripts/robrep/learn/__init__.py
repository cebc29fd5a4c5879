"""Learning: data, models, attacks, training, adversarial examples, AutoAttack, imported checkpoints
(robrep's own files, RobustBench). Everything here runs a network; it knows nothing of stores or
studies."""
