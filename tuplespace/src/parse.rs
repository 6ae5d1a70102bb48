//! The typed syntax a person writes tuples and templates in (for the CLI).
//!
//! ```text
//! tuple    := '(' field (',' field)* [','] ')'
//! field    := string | integer | bytes | wildcard      (wildcards in templates only)
//! string   := "'" chars "'" | '"' chars '"'
//!             escapes: \\ \' \" \n \t \r \0 \u{hex}
//! integer  := ['-' | '+'] decimal digits                  (a signed 64-bit value)
//! bytes    := '0x' hex digits, an even number of them     (0x = empty)
//! wildcard := '*' | '*str' | '*int' | '*bytes'
//! ```
//!
//! Spaces may surround every token. Examples: `('job', 7, *)`, `("a", 0x0102, *int)`.
//! Every error is an [`Error::Parse`] naming the 1-based column (in characters) where
//! the problem is and what is wrong; bounds ([`crate::tuple::ARITY_MAX`], field and
//! tuple sizes) are checked with the same messages as [`Tuple::new`], at the column of
//! the field that breaks them. [`std::fmt::Display`] of a tuple or template writes
//! this syntax back.

use crate::Error;
use crate::tuple::{ARITY_MAX, Field, FieldType, Template, TemplateField, Tuple};

/// Parses a template: `('job', *int, *)`.
pub fn parse_template(text: &str) -> Result<Template, Error> {
    let fields = Parser::new(text).parse_list()?;
    let columns: Vec<usize> = fields.iter().map(|(c, _)| *c).collect();
    let fields = fields.into_iter().map(|(_, f)| f).collect();
    Template::new(fields).map_err(|e| at_field(e, &columns, text))
}

/// Parses a tuple: `('job', 7, 0x0102)`. Wildcards are refused.
pub fn parse_tuple(text: &str) -> Result<Tuple, Error> {
    let fields = Parser::new(text).parse_list()?;
    let mut columns = Vec::with_capacity(fields.len());
    let mut values = Vec::with_capacity(fields.len());
    for (column, field) in fields {
        match field {
            TemplateField::Exact(f) => values.push(f),
            w => {
                return Err(parse_error(
                    column,
                    format!("wildcard {w} is allowed in a template, not in a tuple"),
                ));
            }
        }
        columns.push(column);
    }
    Tuple::new(values).map_err(|e| at_field(e, &columns, text))
}

fn parse_error(column: usize, problem: impl Into<String>) -> Error {
    Error::Parse { column, problem: problem.into() }
}

/// Places a bound error at the column of the field it names (or the start).
fn at_field(e: Error, columns: &[usize], text: &str) -> Error {
    let column = match &e {
        Error::FieldTooLong { index, .. } => columns.get(*index).copied().unwrap_or(1),
        Error::ArityOverMax { .. } => columns.get(ARITY_MAX).copied().unwrap_or(1),
        Error::ArityZero => text.chars().count().max(1),
        _ => text.chars().position(|c| c == '(').map_or(1, |p| p + 1),
    };
    parse_error(column, e.to_string())
}

#[derive(Debug)]
struct Parser {
    chars: Vec<char>,
    /// Index into `chars`; the column is `pos + 1`.
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Self {
        Self { chars: text.chars().collect(), pos: 0 }
    }

    fn column(&self) -> usize {
        self.pos + 1
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn describe(&self) -> String {
        match self.peek() {
            Some(c) => format!("'{c}'"),
            None => "the end".to_string(),
        }
    }

    /// The fields with the column each starts at. Stops reading fields past
    /// ARITY_MAX + 1, so a huge input does not build a huge list.
    fn parse_list(mut self) -> Result<Vec<(usize, TemplateField)>, Error> {
        self.skip_spaces();
        if self.peek() != Some('(') {
            return Err(parse_error(
                self.column(),
                format!("expected '(' to open the tuple, found {}", self.describe()),
            ));
        }
        self.pos += 1;
        let mut fields = Vec::new();
        loop {
            self.skip_spaces();
            // Here either nothing was read yet or a ',' was: a ')' closes the tuple
            // after a trailing comma.
            if self.peek() == Some(')') {
                if fields.is_empty() {
                    return Err(parse_error(self.column(), "a tuple needs at least one field"));
                }
                self.pos += 1;
                break;
            }
            let column = self.column();
            let field = self.parse_field()?;
            fields.push((column, field));
            if fields.len() > ARITY_MAX {
                return Err(parse_error(
                    column,
                    format!("more than {ARITY_MAX} fields (the most a tuple may have)"),
                ));
            }
            self.skip_spaces();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    break;
                }
                None => {
                    return Err(parse_error(
                        self.column(),
                        "the tuple is not closed: expected ',' or ')'",
                    ));
                }
                Some(_) => {
                    return Err(parse_error(
                        self.column(),
                        format!("expected ',' or ')' after a field, found {}", self.describe()),
                    ));
                }
            }
        }
        self.skip_spaces();
        if self.peek().is_some() {
            return Err(parse_error(
                self.column(),
                format!("unexpected {} after the closing ')'", self.describe()),
            ));
        }
        Ok(fields)
    }

    fn parse_field(&mut self) -> Result<TemplateField, Error> {
        match self.peek() {
            Some('\'' | '"') => Ok(TemplateField::Exact(Field::Str(self.parse_string()?))),
            Some('*') => self.parse_wildcard(),
            Some('0') if matches!(self.chars.get(self.pos + 1), Some('x' | 'X')) => {
                Ok(TemplateField::Exact(Field::Bytes(self.parse_bytes()?)))
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                Ok(TemplateField::Exact(Field::Int(self.parse_int()?)))
            }
            _ => Err(parse_error(
                self.column(),
                format!(
                    "expected a field ('string', integer, 0x bytes, *, *str, *int or *bytes), \
                     found {}",
                    self.describe()
                ),
            )),
        }
    }

    fn parse_string(&mut self) -> Result<String, Error> {
        let start = self.column();
        let quote = self.peek().expect("called on a quote");
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(parse_error(
                    start,
                    format!("string opened here with {quote} is not closed"),
                ));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let escape_column = self.column() - 1;
            let escaped = match self.peek() {
                Some('\\') => '\\',
                Some('\'') => '\'',
                Some('"') => '"',
                Some('n') => '\n',
                Some('t') => '\t',
                Some('r') => '\r',
                Some('0') => '\0',
                Some('u') => {
                    self.pos += 1;
                    out.push(self.parse_unicode_escape(escape_column)?);
                    continue;
                }
                Some(other) => {
                    return Err(parse_error(
                        escape_column,
                        format!(
                            "unknown escape \\{other} (known: \\\\ \\' \\\" \\n \\t \\r \\0 \\u{{..}})"
                        ),
                    ));
                }
                None => {
                    return Err(parse_error(
                        start,
                        format!("string opened here with {quote} is not closed"),
                    ));
                }
            };
            self.pos += 1;
            out.push(escaped);
        }
    }

    /// After `\u`: `{hex}`.
    fn parse_unicode_escape(&mut self, escape_column: usize) -> Result<char, Error> {
        let bad = || {
            parse_error(escape_column, "\\u escape must be \\u{1..6 hex digits} naming a character")
        };
        if self.peek() != Some('{') {
            return Err(bad());
        }
        self.pos += 1;
        let mut value = 0u32;
        let mut digits = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(16)) {
            digits += 1;
            if digits > 6 {
                return Err(bad());
            }
            value = value * 16 + d;
            self.pos += 1;
        }
        if digits == 0 || self.peek() != Some('}') {
            return Err(bad());
        }
        self.pos += 1;
        char::from_u32(value).ok_or_else(bad)
    }

    fn parse_wildcard(&mut self) -> Result<TemplateField, Error> {
        let start = self.column();
        self.pos += 1;
        let name_start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let name: String = self.chars[name_start..self.pos].iter().collect();
        match name.as_str() {
            "" => Ok(TemplateField::Any),
            "str" => Ok(TemplateField::AnyOf(FieldType::Str)),
            "int" => Ok(TemplateField::AnyOf(FieldType::Int)),
            "bytes" => Ok(TemplateField::AnyOf(FieldType::Bytes)),
            other => Err(parse_error(
                start,
                format!("unknown wildcard *{other}: expected *, *str, *int or *bytes"),
            )),
        }
    }

    fn parse_bytes(&mut self) -> Result<Vec<u8>, Error> {
        let start = self.column();
        self.pos += 2;
        let digits_start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            let c = self.peek().expect("checked");
            if !c.is_ascii_hexdigit() {
                return Err(parse_error(self.column(), format!("'{c}' is not a hex digit")));
            }
            self.pos += 1;
        }
        let digits = &self.chars[digits_start..self.pos];
        if !digits.len().is_multiple_of(2) {
            return Err(parse_error(
                start,
                format!("hex bytes need an even number of digits, found {}", digits.len()),
            ));
        }
        Ok(digits
            .chunks(2)
            .map(|pair| {
                let hi = pair[0].to_digit(16).expect("checked hex");
                let lo = pair[1].to_digit(16).expect("checked hex");
                (hi * 16 + lo) as u8
            })
            .collect())
    }

    fn parse_int(&mut self) -> Result<i64, Error> {
        let start = self.column();
        let begin = self.pos;
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
        }
        let digits_start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let c = self.peek().expect("checked");
            if !c.is_ascii_digit() {
                return Err(parse_error(
                    self.column(),
                    format!("'{c}' in an integer (integers are decimal; bytes are written 0x..)"),
                ));
            }
            self.pos += 1;
        }
        if self.pos == digits_start {
            return Err(parse_error(start, "a sign must be followed by decimal digits"));
        }
        let text: String = self.chars[begin..self.pos].iter().collect();
        text.parse::<i64>().map_err(|_| {
            parse_error(start, format!("integer {text} does not fit in a signed 64-bit field"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::FIELD_BYTES_MAX;

    fn problem(text: &str) -> (usize, String) {
        match parse_template(text) {
            Err(Error::Parse { column, problem }) => (column, problem),
            other => panic!("{text}: expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn the_issue_examples_parse() {
        let t = parse_template("('job', 7, *)").unwrap();
        assert_eq!(
            t.fields(),
            &[
                TemplateField::Exact(Field::Str("job".into())),
                TemplateField::Exact(Field::Int(7)),
                TemplateField::Any,
            ]
        );
        let t = parse_template(r#"("a", 0x0102, *int)"#).unwrap();
        assert_eq!(
            t.fields(),
            &[
                TemplateField::Exact(Field::Str("a".into())),
                TemplateField::Exact(Field::Bytes(vec![1, 2])),
                TemplateField::AnyOf(FieldType::Int),
            ]
        );
    }

    #[test]
    fn spaces_signs_escapes_and_a_trailing_comma_are_accepted() {
        let t = parse_tuple("  ( -9223372036854775808 ,+5, 'a\\'b\\u{e9}\\n', 0x, )  ").unwrap();
        assert_eq!(
            t.fields(),
            &[
                Field::Int(i64::MIN),
                Field::Int(5),
                Field::Str("a'bé\n".into()),
                Field::Bytes(vec![]),
            ]
        );
        let t = parse_template("(*str,*bytes)").unwrap();
        assert_eq!(t.to_string(), "(*str, *bytes)");
    }

    #[test]
    fn display_and_parse_round_trip() {
        for text in ["('job', 7, *)", "('it\\'s', -1, 0xff00, *int)", "('\\t\\0\\u{1}')"] {
            let t = parse_template(text).unwrap();
            assert_eq!(parse_template(&t.to_string()), Ok(t));
        }
        let t = parse_tuple("('x', 0x01, 3)").unwrap();
        assert_eq!(parse_tuple(&t.to_string()), Ok(t));
    }

    #[test]
    fn errors_say_what_is_wrong_and_where() {
        assert_eq!(problem("'job', 7").0, 1);
        assert!(problem("'job', 7").1.contains("expected '('"));
        assert_eq!(
            problem("('job' 7)"),
            (8, "expected ',' or ')' after a field, found '7'".into())
        );
        assert_eq!(
            problem("('job', 7"),
            (10, "the tuple is not closed: expected ',' or ')'".into())
        );
        assert_eq!(problem("('job, 7)").0, 2);
        assert!(problem("('job, 7)").1.contains("not closed"));
        assert_eq!(
            problem("(*foo)"),
            (2, "unknown wildcard *foo: expected *, *str, *int or *bytes".into())
        );
        assert_eq!(problem("(1, 0x123)").0, 5);
        assert!(problem("(1, 0x123)").1.contains("even number"));
        assert_eq!(problem("(0x1g)").0, 5);
        assert_eq!(problem("(12a)").0, 4);
        assert!(problem("(99999999999999999999)").1.contains("does not fit"));
        assert_eq!(problem("()"), (2, "a tuple needs at least one field".into()));
        assert_eq!(problem("(1,,2)").0, 4);
        assert_eq!(problem("(1) x").0, 5);
        assert_eq!(problem("('a\\q')").0, 4);
        assert_eq!(problem("(abc)").0, 2);
        assert!(problem("(abc)").1.contains("expected a field"));
        assert_eq!(problem("(-)").0, 2);
    }

    #[test]
    fn wildcards_in_a_tuple_and_bounds_are_errors_at_their_field() {
        assert_eq!(
            parse_tuple("('a', *int)"),
            Err(Error::Parse {
                column: 7,
                problem: "wildcard *int is allowed in a template, not in a tuple".into()
            })
        );
        let many = format!("({})", vec!["1"; ARITY_MAX + 1].join(", "));
        assert_eq!(problem(&many).0, 2 + 3 * ARITY_MAX);
        let long = format!("(1, '{}')", "x".repeat(FIELD_BYTES_MAX + 1));
        assert_eq!(
            parse_tuple(&long).unwrap_err(),
            Error::Parse {
                column: 5,
                problem: Error::FieldTooLong { index: 1, bytes: FIELD_BYTES_MAX + 1 }.to_string(),
            }
        );
        // Columns count characters, not bytes.
        assert_eq!(problem("('é', ?)").0, 7);
    }
}
