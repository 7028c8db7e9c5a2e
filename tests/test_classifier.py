"""The stroke classifier learns real digits from their rasterized strokes."""

import numpy as np

from tinydot.evaluation import train_classifier


def test_classifier_learns_from_a_slice_of_real_data(train, test_split):
    classifier = train_classifier(train.subset(np.arange(6000)), epochs=2)
    accuracy = (classifier.predict(test_split.subset(np.arange(2000))) == test_split.labels[:2000]).mean()
    assert accuracy > 0.85  # chance is 0.1; the full classifier (60k, 3 epochs) reaches ~98%
