"""Loading all 70,000 stroke sequences: parsing the archives vs reading the parsed cache.

Baseline (measured in the same run): decompress + validate + convert both splits from the archives.
Goal (issue 2): a cached load of all 70k sequences in < 0.5 s.

    python benchmarks/data_load.py   # needs TINYDOT_DATA, or data in the user cache
"""

import tempfile
import time

import os


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    os.environ["TINYDOT_CACHE"] = tempfile.mkdtemp(prefix="tinydot-bench-")
    from tinydot.data import load_strokes

    def both(**kwargs):
        return [load_strokes(split, **kwargs) for split in ("train", "test")]

    parse = best_of(lambda: both(cache=False), 2)
    both()  # fill the cache
    cached = best_of(both, 5)
    print(f"parse archives (70k sequences): {parse:.3f} s")
    print(f"cached load    (70k sequences): {cached:.3f} s  (goal < 0.5 s)")
    print(f"ratio parse / cached: {parse / cached:.1f}x")


if __name__ == "__main__":
    main()
