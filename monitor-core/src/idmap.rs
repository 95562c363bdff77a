//! Hash maps keyed by kernel ids (pids, tids, fds, request ids), which the event path looks up
//! several times per event. They hash with foldhash's fast hasher: SipHash, the standard
//! library's default, was ~8 % of the daemon's CPU under load. These keys are numbers the
//! kernel hands out, not data a client chooses, so SipHash's resistance to chosen-key
//! collisions buys nothing here; maps keyed by paths or header values keep it.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
