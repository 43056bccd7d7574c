"""The first code the remote interpreter runs.

The exec'd one-line stub reads a blob from stdin: this module's code (ending in a
call of ``_boot``) and the shipped modules, compiled by the local side for this
major.minor version, or as source for another version (spawn mode).  It moves
the channel off fds 0/1 so that nothing a child or the agent prints can corrupt
the protocol, installs an importer that serves the
shipped modules (the agent and cloudpickle) from memory, and starts the
supervisor.  Nothing is written to disk.
"""

import os
import sys


class _ShippedImporter:
    """A meta path finder and loader for the shipped modules' code objects."""

    def __init__(self, modules):
        self.modules = modules      # name -> (is_package, code, file name)

    def find_spec(self, name, path=None, target=None):
        if name not in self.modules:
            return None
        from importlib.machinery import ModuleSpec  # (importlib.util costs 5 ms more)

        spec = ModuleSpec(name, self, origin=self.modules[name][2],  # type: ignore[arg-type]  # (exec_module only)
                          is_package=self.modules[name][0])
        if spec.submodule_search_locations is not None:
            spec.submodule_search_locations = []
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        is_pkg, code, module.__file__ = self.modules[module.__name__]
        if isinstance(code, str):   # another Python than the local one: shipped as source
            code = compile(code, module.__file__, "exec", dont_inherit=True, optimize=2)
            self.modules[module.__name__] = (is_pkg, code, module.__file__)
        exec(code, module.__dict__)

    def get_source(self, name):
        return None     # only code is shipped


def _boot(modules):
    found = sys.argv[2] if len(sys.argv) > 2 else ""     # where the exec script found this interpreter
    sys.argv[1:] = []
    fd_in = os.dup(0)
    fd_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)       # stray prints go to the channel's stderr, never into the protocol
    os.close(null)
    for name in [n for n in sys.modules if n == "cloudpickle" or n.startswith("cloudpickle.")]:
        del sys.modules[name]   # an installed cloudpickle must not shadow the shipped one
    sys.meta_path.insert(0, _ShippedImporter(modules))
    from remoteproc.agent import supervisor

    os._exit(supervisor.main(fd_in, fd_out, found))
