"""The built-in correlation methods, registered in DESIGN.md §3 order (first hit wins)."""

from pipeline.correlation.methods.base import register
from pipeline.correlation.methods.conversation_index import ConversationIndex
from pipeline.correlation.methods.custom import Custom
from pipeline.correlation.methods.in_reply_to import InReplyTo
from pipeline.correlation.methods.smart_matching import SmartMatching
from pipeline.correlation.methods.tracking_token import TrackingToken
from pipeline.correlation.methods.xheader import XHeader

BUILT_IN = (XHeader(), InReplyTo(), TrackingToken(), ConversationIndex(), SmartMatching(), Custom())
for _strategy in BUILT_IN:
    register(_strategy)
