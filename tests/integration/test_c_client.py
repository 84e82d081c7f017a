#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""libmqttbridge as a user gets it: `meson install --destdir`, then the example program
clients/examples/subscriber.c compiled against the installed header and library through
pkg-config, run against the real daemon and mosquitto."""
import glob
import os
import shutil
import subprocess

from harness import WAIT, TestCase, main

BUILD = os.environ.get("MESON_BUILD_ROOT", "build")
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "../../clients/examples/subscriber.c")


class CClient(TestCase):
    def install(self):
        dest = os.path.join(self.tmp, "dest")
        r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", dest],
                           capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return dest

    def test_example_builds_with_pkg_config_and_runs(self):
        dest = self.install()
        pcs = glob.glob(os.path.join(dest, "**/pkgconfig/mqttbridge.pc"), recursive=True)
        self.assertEqual(len(pcs), 1, pcs)
        self.assertTrue(glob.glob(os.path.join(dest, "**/include/mqttbridge/client.h"),
                                  recursive=True))
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]),
                   PKG_CONFIG_SYSROOT_DIR=dest)
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "mqttbridge"], env=env,
                               capture_output=True, text=True, check=True).stdout.split()
        exe = os.path.join(self.tmp, "subscriber")
        libdir = os.path.dirname(glob.glob(os.path.join(dest, "**/libmqttbridge.so.0"),
                                           recursive=True)[0])
        # A sanitizer build's library needs its runtime in the program (clang links it in).
        undefined = subprocess.run(["nm", "-D", "-u", os.path.join(libdir, "libmqttbridge.so.0")],
                                   capture_output=True, text=True, check=True).stdout
        cc = [shutil.which("cc") or "gcc"]
        if "__asan_" in undefined:
            cc = ["clang", "-fsanitize=address,undefined"]
        r = subprocess.run([*cc, "-std=c11", "-Wall", "-Werror", EXAMPLE, "-o", exe, *flags],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = self.broker()
        d = self.daemon(m.port)
        run_env = dict(os.environ, MQTTBRIDGE_SOCKET=d.socket, LD_LIBRARY_PATH=libdir)
        r = subprocess.run([exe, "demo/#", "demo/hello", "hi there", "1"], env=run_env,
                           capture_output=True, text=True, timeout=WAIT * 2)
        self.assertEqual(r.returncode, 0, r.stderr + "\ndaemon log:\n" + d.logtext()[-3000:])
        self.assertEqual(r.stdout, "demo/hello hi there\n")
        # Only the API is exported, with a version.
        syms = subprocess.run(["nm", "-D", "--defined-only",
                               os.path.join(libdir, "libmqttbridge.so.0")],
                              capture_output=True, text=True, check=True).stdout.split("\n")
        names = {line.split()[-1].split("@")[0] for line in syms if line.strip()}
        self.assertEqual({n for n in names if not n.startswith("mqb_")}, {"MQTTBRIDGE_0"})
        # A daemon that is not there: a clear error, not a hang.
        r = subprocess.run([exe, "a", "b", "c", "1"], capture_output=True, text=True,
                           env=dict(run_env, MQTTBRIDGE_SOCKET=os.path.join(self.tmp, "no")),
                           timeout=WAIT)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect to", r.stderr)


if __name__ == "__main__":
    main()
