"""`amoeba`: the command line that composes profiler, amoeba_core and search."""
