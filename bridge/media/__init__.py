"""Media processing shared by both directions: sniffing, images, audio and video.

Nothing here knows Matrix or the gatekeeper: it turns files on disk into other files and
facts about them (dimensions, duration, a thumbnail, a waveform). Files stay on disk; no
function reads a whole media file into memory, except images up to the profile's 16 MiB
limit, which Pillow decodes once to make a thumbnail.

Tools, and why:
- Pillow for images: dimensions, orientation, JPEG thumbnails. Pure wheels, no system
  library, and a decompression-bomb guard.
- Debian's ffmpeg (a subprocess, as mautrix does) for audio and video: transcoding voice
  notes to ogg/opus, a video's first frame, durations, and the PCM a waveform is drawn
  from. A subprocess keeps codec crashes and memory out of the bridge's process, and its
  codecs (libopus, h264) are the system's, maintained and security-patched by Debian.
- puremagic for mimetypes when a client gave none: pure Python, magic numbers only, no
  libmagic to install.
"""
