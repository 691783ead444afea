"""Public benchmarks in their published protocols, one module each, run with ``raysys benchmark NAME``.

- :mod:`raysys.benchmarks.tep`: the Tennessee Eastman process fault detection benchmark.
- :mod:`raysys.benchmarks.attribution`: whether alarms name the sensors their (generated) event touched.

Every detector is fitted in-process (no Ray): these are small datasets.
"""
