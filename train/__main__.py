"""``python -m train``: see train/train.py.

TensorFlow writes its start-up notices (oneDNN, CPU features) straight to stderr while it loads;
they are kept off the terminal, so ``--help`` or an error is the first thing a user reads.
"""
from device.native_stderr import native_stderr_to_log

with native_stderr_to_log():
    from train.train import main

main()
