// pymdownx.arithmatex writes <script type="math/tex"> elements, which MathJax 2 typesets as they
// are. The MathJax served with the site (docs/hooks.py) carries the STIX-Web fonts only.
window.MathJax = {
  "HTML-CSS": { availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null },
  TeX: { equationNumbers: { autoNumber: "none" } },
  showMathMenu: false,
  messageStyle: "none",
};
