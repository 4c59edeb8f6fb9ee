from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageKey(_message.Message):
    __slots__ = ("id", "from_me", "participant")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ME_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    id: str
    from_me: bool
    participant: str
    def __init__(self, id: _Optional[str] = ..., from_me: _Optional[bool] = ..., participant: _Optional[str] = ...) -> None: ...

class ContextInfo(_message.Message):
    __slots__ = ("stanza_id", "participant", "quoted", "mentioned")
    STANZA_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    QUOTED_FIELD_NUMBER: _ClassVar[int]
    MENTIONED_FIELD_NUMBER: _ClassVar[int]
    stanza_id: str
    participant: str
    quoted: Content
    mentioned: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stanza_id: _Optional[str] = ..., participant: _Optional[str] = ..., quoted: _Optional[_Union[Content, _Mapping]] = ..., mentioned: _Optional[_Iterable[str]] = ...) -> None: ...

class ExtendedText(_message.Message):
    __slots__ = ("text", "context_info")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_INFO_FIELD_NUMBER: _ClassVar[int]
    text: str
    context_info: ContextInfo
    def __init__(self, text: _Optional[str] = ..., context_info: _Optional[_Union[ContextInfo, _Mapping]] = ...) -> None: ...

class Media(_message.Message):
    __slots__ = ("direct_path", "media_key", "file_sha256", "file_enc_sha256", "file_length", "mimetype", "caption", "width", "height", "seconds", "file_name", "jpeg_thumbnail", "ptt", "context_info", "waveform")
    DIRECT_PATH_FIELD_NUMBER: _ClassVar[int]
    MEDIA_KEY_FIELD_NUMBER: _ClassVar[int]
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_ENC_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIMETYPE_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    JPEG_THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    PTT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_INFO_FIELD_NUMBER: _ClassVar[int]
    WAVEFORM_FIELD_NUMBER: _ClassVar[int]
    direct_path: str
    media_key: bytes
    file_sha256: bytes
    file_enc_sha256: bytes
    file_length: int
    mimetype: str
    caption: str
    width: int
    height: int
    seconds: int
    file_name: str
    jpeg_thumbnail: bytes
    ptt: bool
    context_info: ContextInfo
    waveform: bytes
    def __init__(self, direct_path: _Optional[str] = ..., media_key: _Optional[bytes] = ..., file_sha256: _Optional[bytes] = ..., file_enc_sha256: _Optional[bytes] = ..., file_length: _Optional[int] = ..., mimetype: _Optional[str] = ..., caption: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., seconds: _Optional[int] = ..., file_name: _Optional[str] = ..., jpeg_thumbnail: _Optional[bytes] = ..., ptt: _Optional[bool] = ..., context_info: _Optional[_Union[ContextInfo, _Mapping]] = ..., waveform: _Optional[bytes] = ...) -> None: ...

class Reaction(_message.Message):
    __slots__ = ("key", "text", "sender_timestamp_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SENDER_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    key: MessageKey
    text: str
    sender_timestamp_ms: int
    def __init__(self, key: _Optional[_Union[MessageKey, _Mapping]] = ..., text: _Optional[str] = ..., sender_timestamp_ms: _Optional[int] = ...) -> None: ...

class Revoke(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: MessageKey
    def __init__(self, key: _Optional[_Union[MessageKey, _Mapping]] = ...) -> None: ...

class Edit(_message.Message):
    __slots__ = ("key", "text", "timestamp_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    key: MessageKey
    text: str
    timestamp_ms: int
    def __init__(self, key: _Optional[_Union[MessageKey, _Mapping]] = ..., text: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class SenderKeyDistribution(_message.Message):
    __slots__ = ("group_id", "axolotl")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    AXOLOTL_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    axolotl: bytes
    def __init__(self, group_id: _Optional[str] = ..., axolotl: _Optional[bytes] = ...) -> None: ...

class Content(_message.Message):
    __slots__ = ("sender_key_distribution", "text", "extended_text", "image", "video", "audio", "document", "reaction", "revoke", "edit")
    SENDER_KEY_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EXTENDED_TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    REACTION_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    EDIT_FIELD_NUMBER: _ClassVar[int]
    sender_key_distribution: SenderKeyDistribution
    text: str
    extended_text: ExtendedText
    image: Media
    video: Media
    audio: Media
    document: Media
    reaction: Reaction
    revoke: Revoke
    edit: Edit
    def __init__(self, sender_key_distribution: _Optional[_Union[SenderKeyDistribution, _Mapping]] = ..., text: _Optional[str] = ..., extended_text: _Optional[_Union[ExtendedText, _Mapping]] = ..., image: _Optional[_Union[Media, _Mapping]] = ..., video: _Optional[_Union[Media, _Mapping]] = ..., audio: _Optional[_Union[Media, _Mapping]] = ..., document: _Optional[_Union[Media, _Mapping]] = ..., reaction: _Optional[_Union[Reaction, _Mapping]] = ..., revoke: _Optional[_Union[Revoke, _Mapping]] = ..., edit: _Optional[_Union[Edit, _Mapping]] = ...) -> None: ...
