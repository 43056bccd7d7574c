"""The first code the remote interpreter runs.

The exec'd one-line stub reads this module's source (followed by a call of
``_boot`` with the shipped module sources) from stdin and executes it.  It moves
the channel off fds 0/1 so that nothing a child or the agent prints can corrupt
the protocol, installs an importer that serves the shipped modules (the agent and
cloudpickle) from memory, and starts the supervisor.  Nothing is written to disk.

Keep this file runnable by old Pythons long enough to report their version.
"""

import os
import sys


class _SourceImporter:
    """A meta path finder and loader for modules shipped as source strings."""

    def __init__(self, sources):
        self.sources = sources      # name -> (is_package, source)

    def find_spec(self, name, path=None, target=None):
        if name not in self.sources:
            return None
        from importlib.machinery import ModuleSpec  # (importlib.util costs 5 ms more)

        spec = ModuleSpec(name, self, origin=self._filename(name), is_package=self.sources[name][0])
        if spec.submodule_search_locations is not None:
            spec.submodule_search_locations = []
        return spec

    def _filename(self, name):
        if self.sources[name][2:] and self.sources[name][2]:
            return self.sources[name][2]
        is_pkg = self.sources[name][0]
        return "<remoteproc>/" + name.replace(".", "/") + ("/__init__.py" if is_pkg else ".py")

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        module.__file__ = self._filename(name)
        code = compile(self.sources[name][1], module.__file__, "exec")
        exec(code, module.__dict__)

    def get_source(self, name):
        return self.sources[name][1]


def _boot(sources):
    fd_in = os.dup(0)
    fd_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)       # stray prints go to the channel's stderr, never into the protocol
    os.close(null)
    for name in [n for n in sys.modules if n == "cloudpickle" or n.startswith("cloudpickle.")]:
        del sys.modules[name]   # an installed cloudpickle must not shadow the shipped one
    sys.meta_path.insert(0, _SourceImporter(sources))
    from remoteproc.agent import supervisor

    os._exit(supervisor.main(fd_in, fd_out))
