"""The python_tests sandbox: runner.py starts launcher.py (run as a script, by path, in a
fresh interpreter), which confines the program (rootfs.py, seccomp.py) inside the run's cgroup
(cgroups.py). Nothing is imported here."""
