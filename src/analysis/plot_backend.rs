//! One drawing backend for every plot format: [`AnyBackend`] forwards each
//! drawing call to plotters' bitmap backend (PNG) or SVG backend, so the plot
//! functions are written once against a single concrete type. SVG keeps
//! lines, polygons and text as vector elements (the calls are forwarded, not
//! rasterised).

use plotters::prelude::{BitMapBackend, SVGBackend};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind};
use std::path::Path;

/// Output format of the report's plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlotFormat {
    /// Bitmap (the default).
    #[default]
    Png,
    /// Scalable vector graphics.
    Svg,
}

impl PlotFormat {
    /// File extension without the dot.
    pub fn ext(self) -> &'static str {
        match self {
            PlotFormat::Png => "png",
            PlotFormat::Svg => "svg",
        }
    }

    /// Parses `png` or `svg` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Some(PlotFormat::Png),
            "svg" => Some(PlotFormat::Svg),
            _ => None,
        }
    }

    /// The format a file name asks for: `.svg` is SVG, anything else PNG.
    pub fn of_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("svg") => PlotFormat::Svg,
            _ => PlotFormat::Png,
        }
    }
}

/// Error of either backend.
#[derive(Debug)]
pub struct AnyError(String);

impl std::fmt::Display for AnyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyError {}

/// A bitmap or an SVG backend.
pub enum AnyBackend<'a> {
    /// PNG (format from the file extension).
    Bitmap(BitMapBackend<'a>),
    /// SVG.
    Svg(SVGBackend<'a>),
}

impl<'a> AnyBackend<'a> {
    /// A backend of `format` writing `path` (`size` in pixels) when presented.
    pub fn new(path: &'a Path, size: (u32, u32), format: PlotFormat) -> Self {
        match format {
            PlotFormat::Png => AnyBackend::Bitmap(BitMapBackend::new(path, size)),
            PlotFormat::Svg => AnyBackend::Svg(SVGBackend::new(path, size)),
        }
    }
}

fn conv<E: std::error::Error + Send + Sync>(e: DrawingErrorKind<E>) -> DrawingErrorKind<AnyError> {
    match e {
        DrawingErrorKind::DrawingError(e) => DrawingErrorKind::DrawingError(AnyError(e.to_string())),
        DrawingErrorKind::FontError(f) => DrawingErrorKind::FontError(f),
    }
}

/// Forwards one call to the inner backend, converting its error.
macro_rules! fwd {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Bitmap($b) => $call.map_err(conv),
            AnyBackend::Svg($b) => $call.map_err(conv),
        }
    };
}

impl DrawingBackend for AnyBackend<'_> {
    type ErrorType = AnyError;

    fn get_size(&self) -> (u32, u32) {
        match self {
            AnyBackend::Bitmap(b) => b.get_size(),
            AnyBackend::Svg(b) => b.get_size(),
        }
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.ensure_prepared())
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.present())
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.draw_pixel(point, color))
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.draw_line(from, to, style))
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.draw_rect(upper_left, bottom_right, style, fill))
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.draw_path(path, style))
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.draw_circle(center, radius, style, fill))
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.fill_polygon(vert, style))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.draw_text(text, style, pos))
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.estimate_text_size(text, style))
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<AnyError>> {
        fwd!(self, b => b.blit_bitmap(pos, size, src))
    }
}
