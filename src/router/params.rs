//! Captured path parameters, stored inline so that a match does not allocate.

use std::fmt;

/// How many values fit without touching the heap; real routes rarely have more than three.
const INLINE_CAPACITY: usize = 8;

/// The named parameters captured from a request path, in pattern order.
///
/// Names are the route's own list (borrowed from the router, `'r`); values borrow from the
/// request path (`'p`). The first eight values live in a fixed array; only a pattern with more
/// named captures than that spills to the heap. Keeping names out of the inline array keeps
/// [`MatchOutcome`](super::MatchOutcome) small enough to return by value.
#[derive(Clone)]
pub struct PathParams<'r, 'p> {
    names: &'r [Box<str>],
    inline: [&'p str; INLINE_CAPACITY],
    inline_len: usize,
    overflow: Vec<&'p str>,
}

impl<'r, 'p> PathParams<'r, 'p> {
    /// An empty set; does not allocate.
    pub fn new() -> Self {
        PathParams::with_names(&[])
    }

    /// Ready to take one value per name, in order.
    pub(crate) fn with_names(names: &'r [Box<str>]) -> Self {
        PathParams {
            names,
            inline: [""; INLINE_CAPACITY],
            inline_len: 0,
            overflow: Vec::new(),
        }
    }

    /// Records the value of the next name.
    pub(crate) fn push(&mut self, value: &'p str) {
        if let Some(slot) = self.inline.get_mut(self.inline_len) {
            *slot = value;
            self.inline_len += 1;
        } else {
            self.overflow.push(value);
        }
    }

    /// The value captured under `name`, if the pattern has such a parameter.
    pub fn get(&self, name: &str) -> Option<&'p str> {
        let position = self
            .names
            .iter()
            .position(|candidate| &**candidate == name)?;
        self.value_at(position)
    }

    /// The `(name, value)` pairs in the order they appear in the pattern.
    pub fn iter(&self) -> PathParamsIter<'_, 'r, 'p> {
        PathParamsIter {
            params: self,
            position: 0,
        }
    }

    /// How many parameters were captured.
    pub fn len(&self) -> usize {
        self.names.len().min(self.inline_len + self.overflow.len())
    }

    /// Whether the pattern captured nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn value_at(&self, position: usize) -> Option<&'p str> {
        if position < self.inline_len {
            self.inline.get(position).copied()
        } else {
            self.overflow.get(position - self.inline_len).copied()
        }
    }
}

impl Default for PathParams<'_, '_> {
    fn default() -> Self {
        PathParams::new()
    }
}

impl PartialEq for PathParams<'_, '_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for PathParams<'_, '_> {}

impl fmt::Debug for PathParams<'_, '_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_map().entries(self.iter()).finish()
    }
}

impl<'a, 'r, 'p> IntoIterator for &'a PathParams<'r, 'p> {
    type Item = (&'r str, &'p str);
    type IntoIter = PathParamsIter<'a, 'r, 'p>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over [`PathParams`], yielding `(name, value)`.
#[derive(Clone)]
pub struct PathParamsIter<'a, 'r, 'p> {
    params: &'a PathParams<'r, 'p>,
    position: usize,
}

impl<'r, 'p> Iterator for PathParamsIter<'_, 'r, 'p> {
    type Item = (&'r str, &'p str);

    fn next(&mut self) -> Option<Self::Item> {
        let name: &'r str = self.params.names.get(self.position)?;
        let value = self.params.value_at(self.position)?;
        self.position += 1;
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.params.len().saturating_sub(self.position);
        (remaining, Some(remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_finds_by_name() {
        let names: Vec<Box<str>> = vec!["id".into(), "post_id".into()];
        let mut params = PathParams::with_names(&names);
        params.push("42");
        params.push("7");
        assert_eq!(params.len(), 2);
        assert_eq!(params.get("id"), Some("42"));
        assert_eq!(params.get("post_id"), Some("7"));
        assert_eq!(params.get("missing"), None);
        let pairs: Vec<_> = params.iter().collect();
        assert_eq!(pairs, [("id", "42"), ("post_id", "7")]);
    }

    #[test]
    fn spills_past_the_inline_capacity() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let boxed: Vec<Box<str>> = names.iter().map(|&name| Box::from(name)).collect();
        let mut params = PathParams::with_names(&boxed);
        for name in names {
            params.push(name);
        }
        assert_eq!(params.len(), names.len());
        assert_eq!(params.get("j"), Some("j"));
        assert_eq!(params.get("c"), Some("c"));
        let collected: Vec<_> = (&params).into_iter().map(|(name, _)| name).collect();
        assert_eq!(collected, names);
    }

    #[test]
    fn empty_by_default() {
        let params = PathParams::default();
        assert!(params.is_empty());
        assert_eq!(format!("{params:?}"), "{}");
    }
}
