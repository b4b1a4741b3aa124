(function(){
  var cards=Array.prototype.slice.call(document.querySelectorAll('.card'));
  var list=document.getElementById('cards');
  function val(id){var e=document.getElementById(id);return e?e.value:'';}
  function apply(){
    var lv=val('f-level'),pr=val('f-pred'),ok=val('f-correct'),so=val('f-sort'),shown=0;
    cards.sort(function(a,b){
      var ca=parseFloat(a.dataset.conf),cb=parseFloat(b.dataset.conf);
      if(so==='asc'){return ca-cb;} if(so==='level'){return parseInt(a.dataset.levelrank)-parseInt(b.dataset.levelrank)||cb-ca;}
      return cb-ca;});
    cards.forEach(function(c){
      var show=(!lv||c.dataset.level===lv)&&(!pr||c.dataset.pred===pr)&&(!ok||c.dataset.correct===ok);
      c.style.display=show?'':'none'; if(show){shown++;} list.appendChild(c);});
    document.getElementById('count').textContent=shown+' of '+cards.length+' shown';
  }
  ['f-level','f-pred','f-correct','f-sort'].forEach(function(id){
    var e=document.getElementById(id); if(e){e.addEventListener('change',apply);}});
  apply();
})();
