"""The volt-spec test guest: a tiny freestanding x86-64 PVH kernel (sources in ``src/``).

``build.build_guest()`` compiles it with the machine's gcc; ``protocol`` names the
lines it prints and builds its command line.
"""
