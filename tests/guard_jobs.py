"""Job functions for tests of cft_rl.verify.guard; importable by the guard's worker processes."""

import os
import time


def echo(x):
    return x


def sleep_then_echo(seconds, x):
    time.sleep(seconds)
    return x


def die(code):
    os._exit(code)


def boom(message):
    raise RuntimeError(message)


def whoami():
    return os.getpid()
