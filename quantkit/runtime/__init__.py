"""The runtimes quantkit drives in-process (llama.cpp through llama-cpp-python): loading them
quietly and keeping Ctrl-C alive through their C callbacks.

Takes nothing from the stages; used by the backends, the inspection and the evaluation."""
