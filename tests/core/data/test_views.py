"""Dataset views."""


def test_spread_rows_cover_a_class_sorted_dataset():
    """SpreadRows(n) of a dataset stored class by class keeps every class: row i is image
    floor(i * size / n), labels and images follow."""
    import numpy as np

    from cliplens.core.data.views import SpreadRows
    from tests.tiny_models import ArrayDataset

    imgs = np.zeros((30, 4, 4, 3), np.uint8)
    imgs[:, 0, 0, 0] = np.arange(30)
    base = ArrayDataset(imgs)
    base.labels = np.repeat(np.arange(3), 10)           # sorted by class
    view = SpreadRows(base, 6)
    assert list(view.index) == [0, 5, 10, 15, 20, 25]
    assert sorted(set(view.labels)) == [0, 1, 2]
    assert [np.asarray(im)[0, 0, 0] for im in view.images(0, 6)] == [0, 5, 10, 15, 20, 25]
    assert view.describe()["n"] == 6 and view.describe()["of_n"] == 30
    assert view.describe()["subset"] == "spread"
    assert len(SpreadRows(base, 100)) == 30
