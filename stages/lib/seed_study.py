"""The seed study's reported numbers (docs/seed-study.md), for the reports that set ours beside them.

No imports beyond the standard library: ``ssl-pipeline report`` reads them without loading Keras.
"""

# Exercise 2 (self-training) per confidence threshold at 4 iterations. Its "vs baseline" figures
# imply two different baselines (30.80% and 29.52%).
SEED_SELF_TRAINING = {
    0.6: {"seed_samples_used": 19757, "seed_val_accuracy": 0.2600, "seed_test_accuracy": 0.2931,
          "seed_vs_baseline_pts": -0.21},
    0.85: {"seed_samples_used": 15296, "seed_val_accuracy": 0.3180, "seed_test_accuracy": 0.3411,
           "seed_vs_baseline_pts": 3.31},
    0.9: {"seed_note": "too few samples added; no real gain"},
}
SEED_ITERATIONS = 4

# Test top-1 per experiment of the study flow, as the seed reports it.
SEED_RESULTS: dict[str, str] = {
    "baseline": "about 30%",
    "self_training": f"{SEED_SELF_TRAINING[0.85]['seed_test_accuracy']:.2%} (threshold 0.85, {SEED_ITERATIONS} iterations)",
    "autoencoder_two_step": "under 1%",
    "autoencoder_joint": "2.49%",
    "simclr_two_step": "did not train",
    "simclr_joint": "did not train",
}
EXPERIMENTS = tuple(SEED_RESULTS)  # as the study flow names them
UNLABELED_SETS = ("all", "filtered")  # every unlabeled image, or those the outlier filter keeps (exercise 5)
SEED_FILTERED = "worse than unfiltered (no numbers given)"
SEED_OUTLIERS = ("The seed: nu = 0.9, 89.8% of the unlabeled images kept. Here nu is the fraction of the labeled "
                 "images left outside the boundary (the one-class objective's bound), so the seed's 89.8% kept is "
                 "nu = 0.1 here and its 0.9 counted the inside; what nu = 0.9 keeps here: "
                 "`bench/results/outliers-quick.md`.")
