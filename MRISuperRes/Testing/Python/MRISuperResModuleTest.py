"""ctest entry for the module's own tests; runs inside Slicer (slicer_add_python_unittest)."""

import unittest

import slicer


class MRISuperResModuleTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_module_self_test(self):
        from MRISuperRes import MRISuperResTest

        MRISuperResTest("runTest").runTest()

    def test_console_batch_call(self):
        """The documented console call: one line per volume, returns the new node."""
        import numpy as np

        from MRISuperResSlicer import dependencies

        missing = dependencies.needed_packages()
        if missing:  # tests never install packages; say what was not run
            self.skipTest(f"{', '.join(missing)} not installed or too old (tests never install packages)")

        logic = slicer.util.getModuleLogic("MRISuperRes")
        node = slicer.util.addVolumeFromArray(np.random.default_rng(1).random((8, 32, 32)).astype("float32"),
                                              name="batch")
        node.SetSpacing(1.0, 1.0, 4.0)
        output = logic.process(node, model="cubic")
        self.assertEqual(output.GetName(), "batch_SR")
        self.assertEqual(slicer.util.arrayFromVolume(output).shape, (32, 32, 32))
