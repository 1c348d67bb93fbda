#!/usr/bin/env python3
"""Render the demo's real results offscreen with VTK (no Slicer at hand): input, result and truth as three
orthogonal slices each, in physical space. This is a render of results, not a screenshot of the GUI.

    python scripts/render_screenshot.py [--demo-dir demo-output] [--output Resources/Screenshots/render_before_after.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

import _paths  # noqa: F401
from MRISuperResLib import read_volume
from MRISuperResLib.volume import Volume

REPO = Path(__file__).resolve().parents[1]


def image_data(volume: Volume) -> vtk.vtkImageData:
    """The volume as VTK image data on its (axis-aligned) grid, in RAS as Slicer would show it."""
    image = vtk.vtkImageData()
    image.SetDimensions(*volume.grid.size)
    image.SetSpacing(*volume.spacing)
    origin = np.asarray(volume.origin) * np.array([-1, -1, 1])  # LPS → RAS (the demo's direction is identity)
    image.SetOrigin(*origin)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(volume.array.ravel(), deep=True))
    return image


def slice_actors(image: vtk.vtkImageData, window: tuple[float, float]) -> list[vtk.vtkImageActor]:
    colours = vtk.vtkImageMapToWindowLevelColors()
    colours.SetInputData(image)
    colours.SetWindow(window[1] - window[0])
    colours.SetLevel((window[1] + window[0]) / 2)
    colours.SetOutputFormatToLuminance()
    colours.Update()
    nx, ny, nz = image.GetDimensions()
    extents = [(nx // 2, nx // 2, 0, ny - 1, 0, nz - 1), (0, nx - 1, ny // 2, ny // 2, 0, nz - 1),
               (0, nx - 1, 0, ny - 1, nz // 2, nz // 2)]
    actors = []
    for extent in extents:
        actor = vtk.vtkImageActor()
        actor.GetMapper().SetInputConnection(colours.GetOutputPort())
        actor.SetDisplayExtent(*extent)
        actor.InterpolateOff()
        actors.append(actor)
    return actors


def render(panels: list[tuple[str, Volume]], output: Path, window: tuple[float, float], size=(1500, 560)) -> Path:
    render_window = vtk.vtkRenderWindow()
    render_window.SetOffScreenRendering(1)
    render_window.SetSize(*size)
    camera = None
    for index, (title, volume) in enumerate(panels):
        renderer = vtk.vtkRenderer()
        renderer.SetViewport(index / len(panels), 0, (index + 1) / len(panels), 1)
        renderer.SetBackground(0.08, 0.08, 0.1)
        for actor in slice_actors(image_data(volume), window):
            renderer.AddActor(actor)
        text = vtk.vtkTextActor()
        text.SetInput(title)
        text.GetTextProperty().SetFontSize(20)
        text.SetPosition(12, 12)
        renderer.AddActor2D(text)
        if camera is None:
            renderer.ResetCamera()
            camera = renderer.GetActiveCamera()
            centre = np.asarray(camera.GetFocalPoint())
            distance = camera.GetDistance()
            # From the front left and a little above, superior up (RAS).
            camera.SetPosition(*(centre + distance * np.array([-0.55, 0.75, 0.38])))
            camera.SetViewUp(0, 0, 1)
            renderer.ResetCameraClippingRange()
            camera.Zoom(1.15)
        else:
            renderer.SetActiveCamera(camera)
        render_window.AddRenderer(renderer)
    render_window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(render_window)
    grab.Update()
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(output))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, default=REPO / "demo-output")
    parser.add_argument("--output", type=Path, default=REPO / "Resources" / "Screenshots" / "render_before_after.png")
    args = parser.parse_args()
    thick = read_volume(args.demo_dir / "input_T2_thick.nii.gz")
    truth = read_volume(args.demo_dir / "truth_T2.nii.gz")
    result_path = next(args.demo_dir.glob("result_T2_*.nii.gz"))
    result = read_volume(result_path)
    model = result_path.name[len("result_T2_"):-len(".nii.gz")]
    window = (0.0, float(np.percentile(truth.array, 99.5)))
    print(render([("input: 4 mm slices", thick), (f"MRISuperRes ({model}, T1 reference)", result),
                  ("truth: 1 mm", truth)], args.output, window))


if __name__ == "__main__":
    main()
