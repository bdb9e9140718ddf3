/* the strict-CSP page cannot have inline scripts: its snippet is here */
window.__violations = [];
document.addEventListener('securitypolicyviolation', function (e) {
    window.__violations.push(e.violatedDirective + ' ' + e.blockedURI);
});
window.civchat = __config();
