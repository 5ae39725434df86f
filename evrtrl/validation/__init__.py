"""The validation wing: ``evrtrl validate``, the testing API for users' own tests, the Brian2
and Norse bridges and the exact-vs-Euler drift study. Brian2 comes with the ``sim`` extra;
Norse is installed without its dependencies (scripts/setup.sh)."""
