"""The program that runs on the instance, shipped as package data in its user data: the
bootstrap, the warm task runner, the task's one command (`run-task.sh`), the idle power-off
and the bake step. `protocol.py` names what the command and the executor say to each other."""
