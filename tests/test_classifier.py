"""The stroke classifier learns real digits from their rasterized strokes."""

import numpy as np

from tinydot.evaluation import train_classifier


def test_classifier_learns_from_a_slice_of_real_data(train, test_split):
    classifier = train_classifier(train.subset(np.arange(6000)), epochs=2)
    accuracy = (classifier.predict(test_split.subset(np.arange(2000))) == test_split.labels[:2000]).mean()
    assert accuracy > 0.85  # chance is 0.1; the full classifier (60k, 3 epochs) reaches ~98%


def test_classifier_weights_do_not_follow_the_thread_count(train):
    import torch

    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            state = train_classifier(train.subset(np.arange(800)), epochs=1).state_dict()
            assert torch.get_num_threads() == threads  # restored after training
            weights.append(state)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
