"""The seed's usage example (ec2-executor-seed.rst, "2. Usage Example"), its code line for
line; only the executor and the DepsPip pins come from the caller. Shared by the demo and the
end-to-end test. covalent is imported when the example is built, not before: it reads its
configuration (and default executor) when imported, and the caller isolates it first.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

import cloudpickle
from numpy.random import permutation
from sklearn import datasets, svm

# The Covalent server unpickles these functions: ship them by value, as for a script.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def installed_pins(*names: str) -> Any:
    """`DepsPip` pinned to this machine's versions (an emulated instance installs nothing)."""
    import covalent as ct

    return ct.DepsPip(packages=[f"{n}=={importlib.metadata.version(n)}" for n in names])


def make_experiment(executor: Any, deps_pip: Any) -> Any:
    import covalent as ct

    @ct.electron(executor=executor, deps_pip=deps_pip)
    def train_svm(data, C, gamma):
        X, y = data
        clf = svm.SVC(C=C, gamma=gamma)
        clf.fit(X[90:], y[90:])
        return clf

    @ct.electron
    def load_data():
        iris = datasets.load_iris()
        perm = permutation(iris.target.size)
        iris.data = iris.data[perm]
        iris.target = iris.target[perm]
        return iris.data, iris.target

    @ct.electron
    def score_svm(data, clf):
        X_test, y_test = data
        return clf.score(X_test[:90], y_test[:90])

    @ct.lattice
    def run_experiment(C=1.0, gamma=0.7):
        data = load_data()
        clf = train_svm(data=data, C=C, gamma=gamma)
        score = score_svm(data=data, clf=clf)
        return score

    return run_experiment
