//! Proxy-Wasm ABI 0.2.x values and the header-map wire format (spec "Types" and
//! "Serialization"). Plain data, no wasmer types, so it can be tested and fuzzed alone.

/// `proxy_status_t`.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const PARSE_FAILURE: i32 = 4;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `proxy_action_t`, as returned by the stream callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    /// Anything but PAUSE continues, as in Envoy.
    pub fn from_raw(raw: i32) -> Action {
        if raw == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// `proxy_buffer_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    HttpCallResponseBody,
    GrpcCallMessage,
    VmConfiguration,
    PluginConfiguration,
}

impl BufferType {
    pub fn from_raw(raw: i32) -> Option<BufferType> {
        Some(match raw {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcCallMessage,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// `proxy_map_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
    GrpcCallInitialMetadata,
    GrpcCallTrailingMetadata,
}

impl MapType {
    /// An answer to a callout: the plugin's to read, not to change.
    pub fn is_callout_answer(self) -> bool {
        matches!(
            self,
            MapType::HttpCallResponseHeaders
                | MapType::HttpCallResponseTrailers
                | MapType::GrpcCallInitialMetadata
                | MapType::GrpcCallTrailingMetadata
        )
    }
}

impl MapType {
    pub fn from_raw(raw: i32) -> Option<MapType> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcCallInitialMetadata,
            5 => MapType::GrpcCallTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_stream_type_t` values the host acts on.
pub const STREAM_REQUEST: i32 = 0;
pub const STREAM_RESPONSE: i32 = 1;

/// `proxy_log_level_t`.
pub fn log_level(raw: i32) -> log::Level {
    match raw {
        0 => log::Level::Trace,
        1 => log::Level::Debug,
        2 => log::Level::Info,
        3 => log::Level::Warn,
        _ => log::Level::Error,
    }
}

/// The host's log level in Proxy-Wasm numbering, so plugins skip formatting what we drop.
pub fn current_log_level() -> i32 {
    match log::max_level() {
        log::LevelFilter::Trace => 0,
        log::LevelFilter::Debug => 1,
        log::LevelFilter::Info => 2,
        log::LevelFilter::Warn => 3,
        log::LevelFilter::Error | log::LevelFilter::Off => 4,
    }
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_raw(raw: i32) -> Option<MetricKind> {
        Some(match raw {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// Serializes pairs: `u32 count`, then `count × (u32 key_len, u32 value_len)`, then each key
/// and value followed by a NUL byte; little-endian.
pub fn serialize_pairs<'a, I>(pairs: I) -> Vec<u8>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let mut count = 0usize;
    let mut data_len = 0usize;
    for (key, value) in pairs.clone() {
        count += 1;
        data_len += key.len() + value.len() + 2;
    }
    let mut out = Vec::with_capacity(4 + count * 8 + data_len);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (key, value) in pairs.clone() {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Parses the pairs format, bounds-checked: a malformed buffer from a plugin is an error,
/// never a panic. An empty buffer and a lone NUL both mean "no pairs".
pub fn deserialize_pairs(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if data.is_empty() || data == [0] {
        return Some(Vec::new());
    }
    let count = read_u32(data, 0)? as usize;
    // Each pair needs 8 bytes of sizes and 2 NULs: refuse counts the buffer cannot hold
    // before allocating for them.
    if count > data.len() / 10 {
        return None;
    }
    let mut sizes_at = 4usize;
    let mut data_at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let key_len = read_u32(data, sizes_at)? as usize;
        let value_len = read_u32(data, sizes_at + 4)? as usize;
        sizes_at += 8;
        let key_end = data_at.checked_add(key_len)?;
        let key = data.get(data_at..key_end)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let value = data.get(value_start..value_end)?;
        data_at = value_end.checked_add(1)?;
        if data_at > data.len() {
            return None;
        }
        pairs.push((key, value));
    }
    Some(pairs)
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Splits a property path: the SDK joins segments with NUL (`request\0path`); dotted paths
/// (`request.path`) are accepted too.
pub fn property_segments(path: &[u8]) -> Vec<&[u8]> {
    let separator = if path.contains(&0) { 0 } else { b'.' };
    path.split(move |byte| *byte == separator)
        .filter(|segment| !segment.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_match_the_spec_example() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", b"22")];
        let bytes = serialize_pairs(pairs.iter().copied());
        let expected: Vec<u8> = [
            &[2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0][..],
            b"a\x001\x00b\x0022\x00",
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(deserialize_pairs(&bytes).unwrap(), pairs);
    }

    #[test]
    fn empty_maps_in_both_spellings() {
        assert!(deserialize_pairs(b"").unwrap().is_empty());
        assert!(deserialize_pairs(b"\0").unwrap().is_empty());
        let empty = serialize_pairs(std::iter::empty());
        assert!(deserialize_pairs(&empty).unwrap().is_empty());
    }

    #[test]
    fn malformed_pairs_are_refused() {
        // Count says one pair but no sizes follow.
        assert!(deserialize_pairs(&[1, 0, 0, 0]).is_none());
        // Sizes point past the end.
        let mut bytes = serialize_pairs([(&b"key"[..], &b"value"[..])].into_iter());
        bytes.truncate(bytes.len() - 3);
        assert!(deserialize_pairs(&bytes).is_none());
        // A huge count is refused before allocating.
        assert!(deserialize_pairs(&[255, 255, 255, 255, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn no_input_panics_the_parser() {
        // Every prefix and every single-byte corruption of a valid buffer.
        let valid = serialize_pairs([(&b"k1"[..], &b"v1"[..]), (b"key2", b"")].into_iter());
        for cut in 0..valid.len() {
            let _ = deserialize_pairs(&valid[..cut]);
        }
        for index in 0..valid.len() {
            for byte in [0u8, 1, 0x7f, 0xff] {
                let mut corrupt = valid.clone();
                corrupt[index] = byte;
                let _ = deserialize_pairs(&corrupt);
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let noise: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = deserialize_pairs(&noise);
        }
    }

    #[test]
    fn property_paths_in_both_spellings() {
        assert_eq!(
            property_segments(b"request\0path"),
            vec![&b"request"[..], b"path"]
        );
        assert_eq!(
            property_segments(b"source.address"),
            vec![&b"source"[..], b"address"]
        );
        assert_eq!(property_segments(b"plugin_name"), vec![&b"plugin_name"[..]]);
    }
}
