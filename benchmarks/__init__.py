if __name__ != "evrtrl.benchmarks":  # the folder is installed as evrtrl.benchmarks; a bare import would be a second copy
    raise ImportError(f"import evrtrl.benchmarks, not {__name__}: this folder is installed as evrtrl.benchmarks "
                      "(pip install -e . from the repository root)")
