"""Offline model work: data, training, fine-tuning and evaluation (never on stage).

Reading and cleaning .mid files (:mod:`.midifile`), ``prepare`` and cached datasets
(:mod:`.dataset`), the music21 corpus export (:mod:`.corpus`), supervised training with
teacher forcing (:mod:`.train`), the conditional GAN's training (:mod:`.gan_train`) and
its generation and evaluation protocols (:mod:`.gan_eval`), RL fine-tuning
(:mod:`.tune`), evaluation against the Markov baseline and the music-theory metrics
(:mod:`.evaluate`, :mod:`.theory_eval`), and their sub-commands (:mod:`.cli`,
:mod:`.gan_cli`, :mod:`.tune_cli`).

May import: :mod:`midi_bridge.model` (the networks and what runs them) and the stage's
ratings loader.  Never a generator, the live core or the runtime.
"""
