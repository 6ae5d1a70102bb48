//! Tuples, templates, their bounds, and matching.
//!
//! A [`Tuple`] is 1..=[`ARITY_MAX`] typed [`Field`]s: a UTF-8 string, a signed 64-bit
//! integer, or a byte string. A [`Template`] has the same shape, each field either an
//! exact value or a wildcard: [`TemplateField::Any`] (`*`, any value of any type) or
//! [`TemplateField::AnyOf`] (`*str`, `*int`, `*bytes`, any value of one type).
//!
//! A template matches a tuple when both have the same arity and every template field
//! matches the tuple's field at the same position: an exact field by type and value, a
//! typed wildcard by type, `*` always.
//!
//! Sizes are counted in payload bytes: a string's UTF-8 length, a byte string's length,
//! 8 for an integer. Each field holds at most [`FIELD_BYTES_MAX`], a tuple at most
//! [`TUPLE_BYTES_MAX`]. Constructors check every bound, so a `Tuple` or `Template` value
//! is always valid; a template that no valid tuple can match is refused with
//! [`Error::TemplateNeverMatches`].
//!
//! `Display` writes the syntax [`crate::parse`] reads: `('job', 7, 0x0102, *int)`.

use std::fmt;

use crate::Error;

/// Most fields in a tuple or template.
pub const ARITY_MAX: usize = 16;
/// Most payload bytes in one string or byte field.
pub const FIELD_BYTES_MAX: usize = 16 * 1024;
/// Most payload bytes in one tuple, all fields together.
pub const TUPLE_BYTES_MAX: usize = 64 * 1024;
/// Payload bytes of an integer field.
pub const INT_BYTES: usize = 8;

const _: () = assert!(ARITY_MAX >= 1 && ARITY_MAX <= u8::MAX as usize);
const _: () = assert!(FIELD_BYTES_MAX <= TUPLE_BYTES_MAX);
// A tuple of ARITY_MAX integers is always storable, so arity alone never refuses one.
const _: () = assert!(ARITY_MAX * INT_BYTES <= TUPLE_BYTES_MAX);
// Field lengths are encoded as u32.
const _: () = assert!(TUPLE_BYTES_MAX <= u32::MAX as usize);

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldType {
    /// A UTF-8 string.
    Str,
    /// A signed 64-bit integer.
    Int,
    /// A byte string.
    Bytes,
}

impl FieldType {
    /// The name used in the typed syntax after `*`.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Str => "str",
            FieldType::Int => "int",
            FieldType::Bytes => "bytes",
        }
    }
}

/// One typed value. Ordered by type (string < integer < bytes), then value; the order is
/// used only inside indexes, never to choose a match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// A UTF-8 string.
    Str(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
}

impl Field {
    /// This field's type.
    pub fn field_type(&self) -> FieldType {
        match self {
            Field::Str(_) => FieldType::Str,
            Field::Int(_) => FieldType::Int,
            Field::Bytes(_) => FieldType::Bytes,
        }
    }

    /// Payload bytes: the string's or byte string's length, [`INT_BYTES`] for an integer.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Field::Str(s) => s.len(),
            Field::Int(_) => INT_BYTES,
            Field::Bytes(b) => b.len(),
        }
    }
}

/// Checks arity and per-field bounds; returns the total payload bytes.
fn check_shape<'a>(
    arity: usize,
    exact: impl Iterator<Item = (usize, &'a Field)>,
) -> Result<usize, Error> {
    if arity == 0 {
        return Err(Error::ArityZero);
    }
    if arity > ARITY_MAX {
        return Err(Error::ArityOverMax { arity });
    }
    let mut bytes = 0usize;
    for (index, field) in exact {
        let field_bytes = field.payload_bytes();
        if field.field_type() != FieldType::Int && field_bytes > FIELD_BYTES_MAX {
            return Err(Error::FieldTooLong { index, bytes: field_bytes });
        }
        bytes += field_bytes;
    }
    Ok(bytes)
}

/// A valid tuple: 1..=[`ARITY_MAX`] fields within the size bounds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    fields: Vec<Field>,
}

impl Tuple {
    /// A tuple of `fields`, or the first bound it breaks.
    pub fn new(fields: Vec<Field>) -> Result<Self, Error> {
        let bytes = check_shape(fields.len(), fields.iter().enumerate())?;
        if bytes > TUPLE_BYTES_MAX {
            return Err(Error::TupleTooLarge { bytes });
        }
        Ok(Self { fields })
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The number of fields (1..=[`ARITY_MAX`]).
    pub fn arity(&self) -> usize {
        self.fields.len()
    }

    /// The sum of the fields' payload bytes.
    pub fn payload_bytes(&self) -> usize {
        self.fields.iter().map(Field::payload_bytes).sum()
    }

    /// The first field (a tuple always has one).
    pub fn first(&self) -> &Field {
        &self.fields[0]
    }
}

/// One field of a template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TemplateField {
    /// `*`: any value of any type.
    Any,
    /// `*str`, `*int`, `*bytes`: any value of this type.
    AnyOf(FieldType),
    /// Exactly this value (type and value).
    Exact(Field),
}

impl TemplateField {
    /// Whether this template field matches `field`.
    pub fn matches(&self, field: &Field) -> bool {
        match self {
            TemplateField::Any => true,
            TemplateField::AnyOf(t) => field.field_type() == *t,
            TemplateField::Exact(f) => f == field,
        }
    }
}

/// A valid template: 1..=[`ARITY_MAX`] fields, each exact field within
/// [`FIELD_BYTES_MAX`], and able to match some valid tuple.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Template {
    fields: Vec<TemplateField>,
}

impl Template {
    /// A template of `fields`, or why it is invalid or can never match.
    pub fn new(fields: Vec<TemplateField>) -> Result<Self, Error> {
        let exact = fields.iter().enumerate().filter_map(|(i, f)| match f {
            TemplateField::Exact(f) => Some((i, f)),
            _ => None,
        });
        let bytes_exact = check_shape(fields.len(), exact)?;
        // A wildcard can always be filled with an integer (INT_BYTES) or an empty
        // string/bytes (0): the smallest tuple matching this template is its exact
        // bytes plus INT_BYTES for every `*int`.
        let bytes_min = bytes_exact
            + fields.iter().filter(|f| **f == TemplateField::AnyOf(FieldType::Int)).count()
                * INT_BYTES;
        if bytes_min > TUPLE_BYTES_MAX {
            return Err(Error::TemplateNeverMatches { bytes_min });
        }
        Ok(Self { fields })
    }

    /// The template that matches exactly `tuple`.
    pub fn exact(tuple: &Tuple) -> Self {
        Self { fields: tuple.fields.iter().cloned().map(TemplateField::Exact).collect() }
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[TemplateField] {
        &self.fields
    }

    /// The number of fields (1..=[`ARITY_MAX`]).
    pub fn arity(&self) -> usize {
        self.fields.len()
    }

    /// The first field (a template always has one).
    pub fn first(&self) -> &TemplateField {
        &self.fields[0]
    }

    /// Whether this template matches `tuple`: same arity, every field matches.
    pub fn matches(&self, tuple: &Tuple) -> bool {
        self.fields.len() == tuple.fields.len()
            && self.fields.iter().zip(&tuple.fields).all(|(t, f)| t.matches(f))
    }

    /// The tuple this template denotes when it has no wildcards.
    pub fn to_tuple(&self) -> Option<Tuple> {
        let fields = self
            .fields
            .iter()
            .map(|f| match f {
                TemplateField::Exact(f) => Some(f.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        // Same fields, same bounds as the template, which already passed them, except
        // the tuple total (a template only bounds it through TemplateNeverMatches,
        // which is the same sum when there are no wildcards).
        Tuple::new(fields).ok()
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Str(s) => {
                f.write_str("'")?;
                for c in s.chars() {
                    match c {
                        '\'' => f.write_str("\\'")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        '\r' => f.write_str("\\r")?,
                        '\0' => f.write_str("\\0")?,
                        c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("'")
            }
            Field::Int(i) => write!(f, "{i}"),
            Field::Bytes(b) => {
                f.write_str("0x")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for TemplateField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateField::Any => f.write_str("*"),
            TemplateField::AnyOf(t) => write!(f, "*{}", t.name()),
            TemplateField::Exact(field) => write!(f, "{field}"),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    f.write_str("(")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_str(")")
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, &self.fields)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, &self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Field {
        Field::Str(v.to_string())
    }

    #[test]
    fn tuple_bounds_are_checked_with_the_field_that_breaks_them() {
        assert_eq!(Tuple::new(vec![]), Err(Error::ArityZero));
        assert_eq!(
            Tuple::new(vec![Field::Int(1); ARITY_MAX + 1]),
            Err(Error::ArityOverMax { arity: ARITY_MAX + 1 })
        );
        assert!(Tuple::new(vec![Field::Int(1); ARITY_MAX]).is_ok());
        let long = Field::Bytes(vec![0; FIELD_BYTES_MAX + 1]);
        assert_eq!(
            Tuple::new(vec![Field::Int(1), long]),
            Err(Error::FieldTooLong { index: 1, bytes: FIELD_BYTES_MAX + 1 })
        );
        let full = Field::Str("x".repeat(FIELD_BYTES_MAX));
        let n = TUPLE_BYTES_MAX / FIELD_BYTES_MAX;
        assert!(Tuple::new(vec![full.clone(); n]).is_ok());
        assert_eq!(
            Tuple::new(vec![full; n + 1]),
            Err(Error::TupleTooLarge { bytes: (n + 1) * FIELD_BYTES_MAX })
        );
    }

    #[test]
    fn template_that_can_never_match_is_refused() {
        let full = TemplateField::Exact(Field::Bytes(vec![0; FIELD_BYTES_MAX]));
        let n = TUPLE_BYTES_MAX / FIELD_BYTES_MAX;
        let mut fields = vec![full.clone(); n];
        fields.push(TemplateField::Any);
        assert!(Template::new(fields.clone()).is_ok(), "a `*` can be an empty string");
        *fields.last_mut().unwrap() = TemplateField::AnyOf(FieldType::Int);
        assert_eq!(
            Template::new(fields),
            Err(Error::TemplateNeverMatches { bytes_min: TUPLE_BYTES_MAX + INT_BYTES })
        );
        assert_eq!(Template::new(vec![]), Err(Error::ArityZero));
    }

    #[test]
    fn matching_needs_same_arity_and_every_field() {
        let t = Tuple::new(vec![s("job"), Field::Int(7), Field::Bytes(vec![1])]).unwrap();
        let m = |fields: Vec<TemplateField>| Template::new(fields).unwrap().matches(&t);
        use TemplateField::*;
        assert!(m(vec![Exact(s("job")), Any, Any]));
        assert!(m(vec![AnyOf(FieldType::Str), AnyOf(FieldType::Int), AnyOf(FieldType::Bytes)]));
        assert!(!m(vec![Exact(s("job")), Any]), "arity differs");
        assert!(!m(vec![Exact(s("job")), Exact(Field::Int(8)), Any]));
        assert!(!m(vec![Any, AnyOf(FieldType::Str), Any]), "7 is an int");
        assert!(!m(vec![Exact(Field::Bytes(b"job".to_vec())), Any, Any]), "types differ");
        assert!(Template::exact(&t).matches(&t));
        assert_eq!(Template::exact(&t).to_tuple(), Some(t));
    }

    #[test]
    fn display_writes_the_typed_syntax() {
        let t = Tuple::new(vec![s("it's\n"), Field::Int(-3), Field::Bytes(vec![1, 0xab])]).unwrap();
        assert_eq!(t.to_string(), r"('it\'s\n', -3, 0x01ab)");
        let tpl = Template::new(vec![
            TemplateField::Any,
            TemplateField::AnyOf(FieldType::Bytes),
            TemplateField::Exact(Field::Int(0)),
        ])
        .unwrap();
        assert_eq!(tpl.to_string(), "(*, *bytes, 0)");
    }
}
