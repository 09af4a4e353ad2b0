"""Video and face handling around the restoration engine (the pipeline in `svfrd.media.pipeline` uses them in order):

- `video_io`: probe, streaming decode (upright RGB + timestamps), H.264 encode with the source's audio;
- `faces`: MediaPipe face landmarks and the 5 SVFR alignment points, small faces searched in tiles;
- `tracking`: the face pass over a video (faces, scene cuts) and the main subject per shot;
- `crop`: the crop policies (tracked, reference) and cutting a 512x512 face crop;
- `masks`: inpainting masks (frame or crop coordinates) and the SVFR task input;
- `paste`: blending the restored face back into the frame;
- `preview`: before/after MP4 and contact sheet.
"""
